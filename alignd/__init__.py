"""alignd: an inference-time alignment and decoding server.

The top-level package holds the components: ``decoding`` (strategies),
``rewardmodels`` (scorers), ``backends`` (policies), ``server`` (gRPC), ``clients`` (Python client,
no torch), ``training``. Importing ``alignd`` itself stays light so the client needs no torch.
"""

__version__ = "0.1.0"
