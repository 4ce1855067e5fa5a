//! What the client side hands over when a login names the admin console
//! instead of a database: the client side builds an [`AdminLogin`], the
//! console serves it, and neither has to know the other.

use std::sync::Arc;

use crate::auth::UserEntry;

pub struct AdminLogin {
    pub user: Arc<UserEntry>,
    /// In `admin_users` (every command), not only `stats_users` (SHOW only).
    pub may_control: bool,
    /// Startup settings, incl. application_name.
    pub settings: Vec<(String, String)>,
}

/// The `application_name` among a client's startup settings ("" when unset).
pub fn application_name(settings: &[(String, String)]) -> &str {
    settings.iter().find(|(k, _)| k == "application_name").map_or("", |(_, v)| v.as_str())
}
