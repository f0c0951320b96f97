//! How Kinesis's error codes are classified: worth retrying, or permanent.

/// The text of the first `<name>` element of an XML error body, if any.
pub fn xml_element(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&format!("</{name}>"))?;
    Some(body[start..end].trim().to_string()).filter(|s| !s.is_empty())
}

/// Entry error codes that will not go away by retrying the same record.
pub fn is_permanent_entry_error(code: &str) -> bool {
    matches!(
        code,
        "KMSAccessDeniedException"
            | "KMSDisabledException"
            | "KMSInvalidStateException"
            | "KMSNotFoundException"
            | "KMSOptInRequired"
            | "ValidationException"
            | "InvalidArgumentException"
    )
}

/// Whether an error answer with this HTTP status and error code is worth retrying: 5xx,
/// 408 and 429 are, whatever their code; otherwise the code decides.
pub fn is_retryable_answer(status: u16, code: &str) -> bool {
    status >= 500 || matches!(status, 408 | 429) || is_retryable_request_error(code)
}

/// Request error codes worth retrying (besides 5xx, timeouts and network failures).
pub fn is_retryable_request_error(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "KMSThrottlingException"
            | "InternalFailure"
            | "InternalFailureException"
            | "InternalServerError"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "RequestTimeoutException"
            | "ExpiredTokenException"
            | "RequestExpired"
    )
}

#[cfg(test)]
mod tests {
    use super::xml_element;

    #[test]
    fn an_xml_error_body_gives_its_code_and_message() {
        let body = r#"<?xml version="1.0" encoding="utf-8"?>
<ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>User: arn:aws:sts::1:assumed-role/r/s is not authorized to perform: kinesis:PutRecords</Message><Type>Sender</Type></Error></Errors></ErrorResponse>"#;
        assert_eq!(xml_element(body, "Code").as_deref(), Some("AccessDenied"));
        assert!(
            xml_element(body, "Message")
                .unwrap()
                .ends_with("kinesis:PutRecords")
        );
        assert_eq!(xml_element("<html>502 Bad Gateway</html>", "Code"), None);
        assert_eq!(xml_element("<Code></Code>", "Code"), None);
    }
}
