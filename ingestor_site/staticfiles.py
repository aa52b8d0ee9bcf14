"""Static files storage that works before and after `collectstatic`."""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class ManifestWhenCollectedStorage(CompressedManifestStaticFilesStorage):  # type: ignore[misc]
    """Hashed, compressed files once `collectstatic` has written its manifest (`make run`,
    deployments); until then, as in a fresh clone's `manage.py runserver`, the plain names, which
    WhiteNoise serves from the app folders (WHITENOISE_USE_FINDERS) instead of answering 500."""

    def stored_name(self, name: str) -> str:
        if not self.hashed_files:
            return name
        return str(super().stored_name(name))
