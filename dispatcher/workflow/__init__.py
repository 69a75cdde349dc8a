"""A request's life before dispatch: requests, policy, agencies, review workflow, privacy, stores, and the pipeline."""
