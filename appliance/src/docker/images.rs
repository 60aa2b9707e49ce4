//! The image verbs served so far: list and inspect, from the port layer's
//! storage component (`/storage/images`).

use appliance::storage::model::Image;
use axum::http::StatusCode;

use super::types::{ImageInspect, ImageSummary};
use super::{Docker, DockerError, Query, Reply, json};
use crate::client::{ClientError, encode};

/// `GET /images/json`.
pub async fn list(d: &Docker, q: &Query) -> Reply {
    q.no_filters()?;
    let images: Vec<Image> = d.client.get("/storage/images").await?;
    let out: Vec<ImageSummary> = images.iter().map(ImageSummary::new).collect();
    json(StatusCode::OK, &out)
}

/// `GET /images/{name}/json`.
pub async fn inspect(d: &Docker, name: &str) -> Reply {
    let path = format!(
        "/storage/images/{}",
        name.split('/').map(encode).collect::<Vec<_>>().join("/")
    );
    match d.client.get::<Image>(&path).await {
        Ok(i) => json(StatusCode::OK, &ImageInspect::new(&i)),
        Err(ClientError::Api(a)) if a.status == 404 => {
            Err(DockerError::NoSuchImage(name.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}
