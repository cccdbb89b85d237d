from services.common.service import serve
from services.routing.app import RoutingSettings, create_app

serve(create_app, RoutingSettings())
