"""The HTTP front door (FastAPI, served by uvicorn): agencies submit and follow their own requests and receive
the clips shared for them, reviewers approve or reject them, residents answer through signed links and post clips
publicly; every call runs the library's pipeline and evidence store in-process."""

from dispatcher.api.app import ApiSettings, create_app
from dispatcher.api.backend import Backend, open_backend, open_credentials
from dispatcher.api.credentials import AGENCY, RESIDENT, REVIEWER, Credentials, Principal
from dispatcher.api.residents import ResidentPages, residents_router
from dispatcher.api.server import serve

__all__ = ["AGENCY", "RESIDENT", "REVIEWER", "ApiSettings", "Backend", "Credentials", "Principal", "ResidentPages",
           "create_app", "open_backend", "open_credentials", "residents_router", "serve"]
