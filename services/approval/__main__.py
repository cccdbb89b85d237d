from services.approval.app import settings
from services.common.service import serve

serve("services.approval.app:app", settings)
