"""The validation study of the trust indicators: ``python -m bench.validation`` (docs/VALIDATION.md)."""
