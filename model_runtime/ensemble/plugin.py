"""Ensembles plugged into the runtime, which never imports this package (engine/, scheduler/ and
server/ are checked for it by .importlinter): `model-runtime serve` hands ENSEMBLES to the server.

For the `ensemble` format (a folder with ensemble.json, engine/loading.py) the engine process loads
the EnsembleEngine (engine.py; its members through the engine table's own loaders), and each served
ensemble gets its request hook (voting.py: a vote's per-member sequences and tally).
"""

from __future__ import annotations

from model_runtime.ensemble.engine import load_ensemble_engine
from model_runtime.ensemble.voting import request_hook
from model_runtime.server.hook import Plugin

ENSEMBLES = Plugin(loaders={"ensemble": load_ensemble_engine}, hooks={"ensemble": request_hook})
