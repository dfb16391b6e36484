from services.common.migrations import run_env
from services.generation.models import Base

run_env(Base.metadata)
