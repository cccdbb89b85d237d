from services.common.service import serve
from services.delivery.app import DeliverySettings, create_app

serve(create_app, DeliverySettings())
