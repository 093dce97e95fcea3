//! The broker baseline of `bench`: a plain lapin publisher with publisher confirms into a
//! queue like the service's work queue (durable quorum queue, persistent messages of the
//! same size, `mandatory`), with the same number of publishes in flight spread over the
//! same number of confirm channels. Its rate is the ceiling the receiver is compared to.
//!
//! INVARIANT: the baseline queue carries the bench's unique prefix and is deleted at the
//! end, whatever happened in between. Besides `queue/rabbitmq.rs`, this is the only
//! module that names lapin: the baseline must not go through the service's code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde::Serialize;

/// What the baseline measured.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    pub published: u64,
    pub seconds: f64,
    pub per_sec: f64,
    pub message_bytes: usize,
    pub in_flight: usize,
    pub channels: usize,
    /// Nacks, returns and channel errors.
    pub errors: u64,
    /// The local RabbitMQ node's CPU per confirmed message, in µs (when the broker URL is a
    /// loopback one and exactly one node runs on this machine).
    pub broker_cpu_us_per_message: Option<f64>,
    /// The publisher's (the bench process's) CPU per confirmed message, in µs.
    pub publisher_cpu_us_per_message: Option<f64>,
}

/// Publishes `body`-sized persistent messages with confirms for `duration`, keeping
/// `in_flight` publishes outstanding over `channels` confirm channels.
pub async fn run(
    url: &str,
    queue: &str,
    body: Vec<u8>,
    in_flight: usize,
    channels: usize,
    duration: Duration,
) -> anyhow::Result<BaselineReport> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("baseline: cannot connect to RabbitMQ")?;
    let setup = connection.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(50));
    setup
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .context("baseline: cannot declare the queue")?;

    let result = publish_for(&connection, queue, body, in_flight, channels, duration).await;

    let _ = setup
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "baseline done".into()).await;
    result
}

async fn publish_for(
    connection: &Connection,
    queue: &str,
    body: Vec<u8>,
    in_flight: usize,
    channels: usize,
    duration: Duration,
) -> anyhow::Result<BaselineReport> {
    let mut confirm_channels = Vec::with_capacity(channels.max(1));
    for _ in 0..channels.max(1) {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        confirm_channels.push(channel);
    }
    let body: Arc<[u8]> = body.into();
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let side = crate::cpu::SideCpu::start();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(in_flight);
    for n in 0..in_flight.max(1) {
        let channel = confirm_channels[n % confirm_channels.len()].clone();
        let (body, acked, errors) = (body.clone(), acked.clone(), errors.clone());
        let queue = queue.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                sequence += 1;
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(format!("baseline-{n}-{sequence}").into());
                let confirmed = async {
                    channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            &body,
                            properties,
                        )
                        .await?
                        .await
                }
                .await;
                match confirmed {
                    Ok(Confirmation::Ack(None)) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let published = acked.load(Ordering::Relaxed);
    let (broker_cpu_us_per_message, publisher_cpu_us_per_message) = side.per(published as usize);
    Ok(BaselineReport {
        published,
        seconds,
        per_sec: published as f64 / seconds.max(f64::EPSILON),
        message_bytes: body.len(),
        in_flight,
        channels: confirm_channels.len(),
        errors: errors.load(Ordering::Relaxed),
        broker_cpu_us_per_message,
        publisher_cpu_us_per_message,
    })
}
