"""The one thing the components share: the contract between them.

* ``events``: the ``transcript.v1`` and ``transcript.partial.v1`` event dataclasses, their JSON
  Schemas (``schemas/``) and validation;
* ``kafka``: the Kafka client settings, read from the environment once, under the same variable
  names in every component;
* ``env``: parsing of environment values (booleans) and the error naming a bad variable.

Every image copies this package next to its component. It imports no component (import-linter
checks it in ``make test``) and needs only the Pipfile's ``[packages]`` category.
"""
