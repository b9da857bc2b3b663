"""The transcription platform's cloud, as Pulumi components: one module per concern.

`program.main()` is the whole stack (what `__main__.py` runs); `offline` runs any part of it
against Pulumi's mocks so tests and `opsctl infra policy` need no cloud; `policy` holds the
rules every stack must pass.
"""
