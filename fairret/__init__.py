"""fairret: differentiable fairness regularizers for PyTorch.

Import paths follow fairret 0.1.3: ``fairret.statistic``, ``fairret.loss``, ``fairret.metric``.
"""
__version__ = "0.2.0.dev0"
