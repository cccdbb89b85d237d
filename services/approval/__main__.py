from services.approval.app import ApprovalSettings, create_app
from services.common.service import serve

serve(create_app, ApprovalSettings())
