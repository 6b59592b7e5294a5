"""Analysis tools: representation similarity (CCA, SVCCA, PWCCA, CKA) between layers."""
