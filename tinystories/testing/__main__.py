"""`python -m tinystories.testing --port-file F`: the OpenAI-compatible test server in its own process."""

from tinystories.testing.openai_server import main

raise SystemExit(main())
