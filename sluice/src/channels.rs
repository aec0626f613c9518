//! Which channel kinds this build of `sluice` can run (features `kafka` and `nats`, both on by
//! default), and how a broker's or messaging channel's [`ChannelConfig`] becomes one.
//! Brokers and channels get differently named topics and streams (Knative's names for
//! each), so a Broker and a Channel of the same name never share storage.

use async_trait::async_trait;
use sluice_channels::memory::MemoryChannel;
use sluice_channels::{Channel, ChannelError};
use sluice_core::topology::{ChannelConfig, Kind, ObjectRef};
use std::sync::Arc;

pub struct Factory;

#[async_trait]
impl sluice_dispatcher::ChannelFactory for Factory {
    async fn create(
        &self,
        owner: &ObjectRef,
        config: &ChannelConfig,
    ) -> Result<Arc<dyn Channel>, ChannelError> {
        match config {
            ChannelConfig::Memory {
                capacity,
                max_bytes,
            } => Ok(Arc::new(MemoryChannel::with_limits(*capacity, *max_bytes))),
            #[cfg(feature = "kafka")]
            ChannelConfig::Kafka {
                bootstrap_servers,
                partitions,
                replication_factor,
            } => {
                use sluice_channels::kafka::{KafkaChannel, KafkaSettings};
                let settings = match owner.kind {
                    Kind::Broker => KafkaSettings::for_broker(
                        &owner.key,
                        bootstrap_servers.as_str(),
                        *partitions,
                        *replication_factor,
                    ),
                    _ => KafkaSettings::for_channel(
                        &owner.key,
                        bootstrap_servers.as_str(),
                        *partitions,
                        *replication_factor,
                    ),
                };
                Ok(Arc::new(KafkaChannel::connect(settings).await?))
            }
            #[cfg(feature = "nats")]
            ChannelConfig::Nats {
                url,
                max_age,
                max_bytes,
            } => {
                use sluice_channels::nats::{NatsChannel, NatsSettings};
                let mut settings = match owner.kind {
                    Kind::Broker => NatsSettings::for_broker(url.as_str(), &owner.key),
                    _ => NatsSettings::for_channel(url.as_str(), &owner.key),
                };
                settings.max_age = *max_age;
                settings.max_bytes = *max_bytes;
                Ok(Arc::new(NatsChannel::connect(settings).await?))
            }
            #[allow(unreachable_patterns)]
            other => Err(ChannelError::Config(format!(
                "{owner}: class {} is not compiled into this build of sluice (build with --features kafka,nats)",
                other.class_name()
            ))),
        }
    }
}
