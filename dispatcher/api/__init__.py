"""The HTTP front door (FastAPI, served by uvicorn): agencies submit and follow their own requests, reviewers
approve or reject them; every call runs the library's pipeline in-process."""

from dispatcher.api.app import ApiSettings, create_app
from dispatcher.api.backend import Backend, open_backend, open_credentials
from dispatcher.api.credentials import AGENCY, REVIEWER, Credentials, Principal
from dispatcher.api.server import serve

__all__ = ["AGENCY", "REVIEWER", "ApiSettings", "Backend", "Credentials", "Principal", "create_app", "open_backend",
           "open_credentials", "serve"]
