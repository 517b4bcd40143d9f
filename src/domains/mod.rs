//! One module per domain: its GraphQL types and resolvers (and, as domains
//! grow, their SQL).

pub mod accounts;
pub mod changes;
pub mod countdown;
pub mod dashboard;
pub mod notifications;
pub mod stocks;
