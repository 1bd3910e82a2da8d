"""feather.serve: serve an export folder over the network (needs the ``[serve]`` extra).

    feather-serve feather-export --port 8000            # OpenAI-compatible, 127.0.0.1 only
    feather-serve feather-export --triton-repo repo/    # a Triton model repository

In Python: ``feather.serve.app.create_app(Pipeline.load(folder), "name")`` is an ASGI app;
``feather.serve.triton.write_repository(folder, repo)`` writes the Triton repository.
See docs/serving.md.
"""
