"""The built-in edit strategies, one a file (README, "Adding an edit strategy"): every module
here is imported by ``semisynth.strategy_registry`` and registers its strategy; the
interface and the registry are there, in the core, where the config reads them."""
