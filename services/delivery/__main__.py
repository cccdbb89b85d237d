from services.common.service import serve
from services.delivery.app import create_app, settings

serve(create_app, settings)
