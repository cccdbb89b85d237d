from services.approval.app import create_app, settings
from services.common.service import serve

serve(create_app, settings)
