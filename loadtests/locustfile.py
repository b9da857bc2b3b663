"""All user classes in one locustfile: what opsctl loads, and what plain Locust runs
(`locust -f loadtests/locustfile.py --host http://127.0.0.1:PORT`), locally or in the
cluster's master/worker pods. Profiles (profiles.yaml) pick classes and weights from here.
"""

from admin import AdminUser  # noqa: F401
from stress import StressUser  # noqa: F401
from transcription import TranscriptionUser  # noqa: F401
from uploads import ChunkedUploadUser  # noqa: F401
