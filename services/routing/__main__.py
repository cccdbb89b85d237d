from services.common.service import serve
from services.routing.app import settings

serve("services.routing.app:app", settings)
