"""The read-path benchmark's floor (bench/read_path.py): a bare Flask app that
answers ``GET /bytes/<n>`` and ``POST /bytes/<n>`` with a JSON object of ``n``
bytes and nothing else. Served like the gateway, by gunicorn with
deploy/config/gunicorn.conf.py:

    gunicorn --config deploy/config/gunicorn.conf.py bench.read_floor:app
"""

from __future__ import annotations

import json
from functools import lru_cache

from flask import Flask, Response, jsonify

app = Flask(__name__)


@lru_cache(maxsize=64)
def padding(size: int) -> str:
    """A string that makes ``{"pad": ...}`` ``size`` bytes long (with jsonify's newline)."""
    return "x" * max(0, size - len(json.dumps({"pad": ""})) - 1)


@app.route("/bytes/<int:size>", methods=["GET", "POST"])
def sized(size: int) -> Response:
    return jsonify(pad=padding(size))  # serialised per request, like any endpoint
