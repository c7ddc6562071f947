"""A real teacher–student pair on real text: SmolLM2-135M-Instruct after a short DPO on gold-ranked pairs of its own
answers to the ``verifiable`` prompt set (the teacher), SmolLM2 as shipped (the reference teacher and the student).

:mod:`~workbench.real_text.store` names and finds the build (loading never trains), :mod:`~workbench.real_text.build`
trains it into the cache, ``python -m workbench.real_text`` builds it and measures the pair (docs/real_text.md)."""
