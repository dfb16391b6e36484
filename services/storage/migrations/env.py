from services.common.migrations import run_env
from services.storage.models import Base

run_env(Base.metadata)
