"""The ``STORAGE`` section of deploy/config/storage.yaml as a typed value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.config import DEFAULT_PUBLIC_BASE_URL, Section, flag, public_base_url

# The fs backend's key ring when none is configured: development and tests only
# (production refuses it, like every dev-only default; make dev generates its own).
DEV_ENCRYPTION_KEYS = "dev-only-insecure:ZGV2LW9ubHktaW5zZWN1cmUtc3RvcmFnZS1rZXktMzI="
SSE_MODES = ("s3", "kms")


@dataclass(frozen=True)
class StorageSettings:
    backend: str = "fs"
    fs_root: str = "var/objects"
    public_base_url: str = DEFAULT_PUBLIC_BASE_URL  # the fs backend's signed URLs
    url_secret: str = "dev-only-insecure-storage-url-secret"
    # fs backend: id:base64key entries, the first wraps new files (backends/sealed.py)
    encryption_keys: str = field(default=DEV_ENCRYPTION_KEYS, repr=False)
    s3_endpoint: str = "127.0.0.1:9000"
    s3_public_endpoint: str = ""
    s3_access_key: str = "minioadmin"
    s3_secret_key: str = "minioadmin"
    s3_bucket: str = "darkroom"
    s3_region: str = "us-east-1"
    s3_secure: bool = False
    s3_sse: str = "s3"  # server-side encryption of every object: s3 (SSE-S3) or kms (SSE-KMS)
    s3_kms_key_id: str = ""  # the KMS key of kms
    retention_days: int = 30
    export_retention_days: int = 7
    upload_max_bytes: int = 20 * 1024 * 1024
    output_max_bytes: int = 2 * 1024 * 1024 * 1024  # one generated output (a video)
    max_image_pixels: int = 40_000_000
    max_concurrent_decodes: int = 4  # images decoded at once per process
    decode_wait_seconds: float = 5.0  # then 503 storage_busy
    url_ttl_seconds: int = 300
    upload_slot_ttl_seconds: int = 900
    purge_batch_size: int = 2000
    orphan_grace_seconds: int = 86400

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StorageSettings:
        """From a whole service config (its ``STORAGE`` section) or the section itself."""
        section, d = Section(config, "STORAGE"), cls()
        get = section.get
        return cls(
            backend=str(get("BACKEND", d.backend)).strip().lower(),
            fs_root=str(get("FS_ROOT", d.fs_root)),
            public_base_url=public_base_url(section.values),
            url_secret=str(get("URL_SECRET", d.url_secret)),
            encryption_keys=_key_list(get("ENCRYPTION_KEYS", d.encryption_keys)),
            s3_endpoint=str(get("S3_ENDPOINT", d.s3_endpoint)),
            s3_public_endpoint=str(get("S3_PUBLIC_ENDPOINT", d.s3_public_endpoint) or ""),
            s3_access_key=str(get("S3_ACCESS_KEY", d.s3_access_key)),
            s3_secret_key=str(get("S3_SECRET_KEY", d.s3_secret_key)),
            s3_bucket=str(get("S3_BUCKET", d.s3_bucket)),
            s3_region=str(get("S3_REGION", d.s3_region)),
            s3_secure=flag(get("S3_SECURE", d.s3_secure)),
            s3_sse=_sse_mode(get("S3_SSE", d.s3_sse)),
            s3_kms_key_id=str(get("S3_KMS_KEY_ID", d.s3_kms_key_id) or "").strip(),
            retention_days=int(get("RETENTION_DAYS", d.retention_days)),
            export_retention_days=int(get("EXPORT_RETENTION_DAYS", d.export_retention_days)),
            upload_max_bytes=int(get("UPLOAD_MAX_BYTES", d.upload_max_bytes)),
            max_image_pixels=int(get("MAX_IMAGE_PIXELS", d.max_image_pixels)),
            max_concurrent_decodes=int(get("MAX_CONCURRENT_DECODES", d.max_concurrent_decodes)),
            decode_wait_seconds=float(get("DECODE_WAIT_SECONDS", d.decode_wait_seconds)),
            url_ttl_seconds=int(get("URL_TTL_SECONDS", d.url_ttl_seconds)),
            upload_slot_ttl_seconds=int(get("UPLOAD_SLOT_TTL_SECONDS", d.upload_slot_ttl_seconds)),
            purge_batch_size=int(get("PURGE_BATCH_SIZE", d.purge_batch_size)),
            output_max_bytes=int(get("OUTPUT_MAX_BYTES", d.output_max_bytes)),
            orphan_grace_seconds=int(get("ORPHAN_GRACE_SECONDS", d.orphan_grace_seconds)),
        )

    def safety_expiry_days(self, longest_retention_days: int | None = None) -> int:
        """Days after which the s3 lifecycle rule expires any object: one day
        after the longest retention (the configured ones, or a longer one a
        plan grants when the caller passes it)."""
        longest = max(self.retention_days, self.export_retention_days, longest_retention_days or 0)
        return longest + 1


def _key_list(value: Any) -> str:
    """A key ring as one comma-separated string (YAML may give a list)."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _sse_mode(value: Any) -> str:
    mode = str(value or "s3").strip().lower()
    if mode not in SSE_MODES:
        raise ValueError(f"STORAGE.S3_SSE must be one of {', '.join(SSE_MODES)}, not {mode!r}")
    return mode
