//! Compiles the admin proto with protox (a protobuf compiler in Rust), so building needs no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/floodgate/admin/v1/admin.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    // The encoded descriptors, served by gRPC server reflection so stock clients need no proto.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("admin_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    let mut config = tonic_prost_build::configure()
        // Replies print as JSON in `floodgatectl --output json`.
        .type_attribute(".floodgate.admin.v1", "#[derive(serde::Serialize)]");
    // An override's typed value: only the field its knob has appears in JSON.
    for field in [
        "max_requests",
        "window_seconds",
        "level",
        "enabled",
        "max_size",
        "max_concurrency",
        "open",
    ] {
        config = config.field_attribute(
            format!(".floodgate.admin.v1.Override.{field}"),
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        );
    }
    config.compile_fds(fds)?;
    Ok(())
}
