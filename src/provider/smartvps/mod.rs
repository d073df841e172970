//! The SmartVPS reseller API over HTTP: [`client`] makes the calls and classifies their outcomes,
//! [`wire`] decodes the reply bodies in every encoding SmartVPS has been seen to use.

pub mod client;
pub mod wire;

pub use client::{ClientError, SmartVpsClient, SmartVpsConfig, install_crypto_provider};
