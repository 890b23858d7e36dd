"""tinystories: synthesize, tokenize, train, grade and inspect TinyStories-scale language models.

One subpackage per pipeline stage, each importable on its own (``import tinystories`` stays cheap and
works without the optional extras):

=================  ==========================================================================
``synth``          an LLM writes the corpus (prompts, quality flags, online and Batch API backends)
``tokenizer``      the byte-level BPE with a C++ core (GPT-2/GPT-Neo compatible, top-K restriction)
``data``           corpora -> zstd token shards -> training batches (native threaded loader)
``model``          GPT-Neo, batched generation, checkpoints, Hugging Face import/export
``train``          ``tinystories-train``: config, the training step, the resumable loop
``kernels``        Triton kernels (attention, LayerNorm, MLP, linear + cross-entropy) as ``nn`` layers
``evaluate``       the judge LLM, capability probes, novelty, held-out loss, reports
``interpret``      MLP neurons and attention heads
``sweep``          size x compute grids and the compute-optimal fit
``llm``            the one OpenAI-compatible client layer (synthesis and the judge)
=================  ==========================================================================

Shared by all: ``corpus`` (every story format, the end-of-text separator, the Instruct layout),
``vocabulary`` and ``story_templates``, ``atomic`` (file writes), ``jsonl`` (append-only logs),
``progress`` (progress bars), ``plots`` (matplotlib), ``cli`` (the ``tinystories`` command) and
``testing`` (an OpenAI-compatible test server and the pytest fixtures of the project's tests).
"""

__version__ = "0.1.0"
