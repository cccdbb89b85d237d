from services.common.service import serve
from services.intake.app import settings

serve("services.intake.app:app", settings)
