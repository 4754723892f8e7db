//! The repository's example domain as an in-memory revision, which most of these tests start from.

use schema::settings::FileKind;
use schema::tree::MemTree;

pub const DOMAIN: &str = include_str!("../../../examples/domain1/domain.toml");
pub const ACCOUNTS: &str = include_str!("../../../examples/domain1/security/accounts.toml");
pub const POLICIES: &str = include_str!("../../../examples/domain1/security/policies.toml");

/// A revision named `name` with the three configuration files given and the example's
/// application and library files (`apps/shop/index.html` holding `shop_page`).
pub fn tree(
    name: &str,
    domain: impl Into<Vec<u8>>,
    accounts: impl Into<Vec<u8>>,
    policies: impl Into<Vec<u8>>,
    shop_page: &str,
) -> MemTree {
    MemTree::new(name)
        .with(FileKind::Domain.path(), domain)
        .with(FileKind::Accounts.path(), accounts)
        .with(FileKind::Policies.path(), policies)
        .with("apps/shop/index.html", shop_page)
        .with("apps/api/bin/api", "x")
        .with("libs/common/README.txt", "x")
}
