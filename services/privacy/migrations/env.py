from services.common.migrations import run_env
from services.privacy.models import Base

run_env(Base.metadata)
