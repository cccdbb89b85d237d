from services.common.service import serve
from services.delivery.app import settings

serve("services.delivery.app:app", settings)
