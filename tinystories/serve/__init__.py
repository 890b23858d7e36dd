"""Serve: trained checkpoints behind an OpenAI-compatible HTTP API and a story playground page.

``tinystories serve CKPT_OR_RUN_OR_SWEEP_DIR...`` (the ``serve`` extra: FastAPI + uvicorn). ``models``
finds the checkpoints and loads them lazily, evicting the least recently used beyond ``--max-models``;
``engine`` runs one model's :class:`~tinystories.model.engine.Engine` in a thread (continuous batching: a request
joins at the next step, leaves when done or abandoned; each row with its own seeded generator, so batching
never changes a story); ``protocol`` holds the OpenAI request/response shapes (pydantic models, which the test
server :mod:`tinystories.testing.openai_server` uses too) and ``api`` the Instruct chat layout and the choices as they
stream; ``app`` the routes (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``, the playground at ``/``
and its run data); ``server`` the FastAPI app with OpenAI-shaped errors and uvicorn in a thread; ``cli`` the
command.
"""
