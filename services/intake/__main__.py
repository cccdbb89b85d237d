from services.common.service import serve
from services.intake.app import IntakeSettings, create_app

serve(create_app, IntakeSettings())
