-- DANE (RFC 7672): TLS sessions whose policy was an MX host's TLSA records are reported with
-- policy-type 'tlsa' (RFC 8460 4.4), the records as the policy string.
ALTER TABLE tls_report_results DROP CONSTRAINT tls_report_results_policy_type_check;
ALTER TABLE tls_report_results ADD CONSTRAINT tls_report_results_policy_type_check
    CHECK (policy_type IN ('sts', 'tlsa', 'no-policy-found'));
