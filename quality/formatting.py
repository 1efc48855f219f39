"""How the report and the experiment's summary write a value: nothing for a missing one, an
integer as it is, any other number to 4 significant digits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def missing(value) -> bool:
    """None, NaN, pandas' NA or NaT: a cell left empty."""
    return (value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA
            or value is pd.NaT)


def number(value, digits: int = 4) -> str:
    if missing(value):
        return ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}g}"
