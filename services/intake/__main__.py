from services.common.service import serve
from services.intake.app import create_app, settings

serve(create_app, settings)
