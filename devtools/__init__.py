"""Developer tooling: the local Kafka + Redis stack, the demo, accuracy scoring and the events tail.

None of it ships in an image; the components never import it (an import-linter rule).
"""
