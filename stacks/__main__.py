"""Entry point Pulumi runs for every stack of this project (see Pulumi.yaml)."""

from transcribe_infra.program import main

main()
