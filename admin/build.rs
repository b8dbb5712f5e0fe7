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
    tonic_prost_build::configure()
        // Replies print as JSON in `floodgatectl --output json`.
        .type_attribute(".floodgate.admin.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
