"""The portal: the subscribers' light mobile pages and the marketers' view over a run's outputs.

``python -m portal serve --output OUT [--input WORLD] …`` serves both (see ``portal.__main__``):
Starlette on uvicorn, Jinja2 server-side templates, an embedded DuckDB store (``portal.store``)
filled from the output folders and, with ``--kafka-bootstrap``, kept current from the result
topics (``portal.feed``). Sign-in is by proof of the phone's (or the marketer's) Ed25519 key
(``portal.auth``, ``schemas.signin``).
"""
