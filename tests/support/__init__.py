"""What the tests share, and nothing else: no test module imports another, and tests/conftest.py holds
only fixtures.

- ``service``: the service harnesses: ``Stack`` (API and Celery workers in a shared Redis) and ``Serve``
  (`trustfid serve` as a user runs it), polling, uploads, the error shape, process helpers;
- ``images``: image factories and folders of files as users have them;
- ``presets``: the scoring options the tests use;
- ``oracles``: what results are checked against: frd-score's own command, the FHIR schema, a browser;
- ``engine``: the real network, loaded once per session; ``realimages``: real images from installed
  packages; ``orthanc``: a real PACS; ``hosts``: worker hosts in network namespaces, to cut off.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
