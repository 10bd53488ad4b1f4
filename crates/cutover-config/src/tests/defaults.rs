//! The data plane's `ServiceSettings::default` (for its own tests and library use) mirrors
//! this crate's defaults, the ones cutover serves with: they cannot drift apart.

use super::*;

#[test]
fn the_proxy_s_test_defaults_are_the_config_s() {
    let p = cutover_proxy::ServiceSettings::default();
    let l = LimitsConfig::default();
    assert_eq!(
        (
            p.max_header_bytes,
            p.max_header_line_bytes,
            p.max_body_bytes,
            p.max_connections
        ),
        (
            l.max_header_bytes,
            l.max_header_line_bytes,
            l.max_body_bytes,
            l.max_connections
        )
    );
    assert_eq!(
        (
            p.header_read_timeout,
            p.connect_timeout,
            p.first_byte_timeout,
            p.request_timeout
        ),
        (
            l.header_read_timeout.get(),
            l.connect_timeout.get(),
            l.first_byte_timeout.get(),
            l.request_timeout.get()
        )
    );
    assert_eq!(
        (p.pool_max_idle, p.pool_idle_timeout),
        (l.pool_max_idle, l.pool_idle_timeout.get())
    );
    assert_eq!(
        (p.response_headers, p.retry_non_idempotent, p.access_log),
        (
            ServiceConfig::RESPONSE_HEADERS,
            ServiceConfig::RETRY_NON_IDEMPOTENT,
            false
        )
    );
    assert_eq!(p.upgrade_protocols, ServiceConfig::UPGRADE_PROTOCOLS);
    assert_eq!(p.protocol, cutover_proxy::Protocol::Http1);
    assert_eq!(UpstreamProtocol::default(), UpstreamProtocol::Http1);
}
