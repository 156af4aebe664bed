// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Tern",
    products: [
        .executable(name: "tern", targets: ["tern"]),
        .library(name: "TernCore", targets: ["TernCore"]),
    ],
    targets: [
        // Innermost SIMD loops, with runtime CPU dispatch (AVX-512 VNNI, AVX2, scalar).
        .target(
            name: "CKernels",
            cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])]
        ),
        // Formats, tokenizer, chat templates, kernels' Swift side, models, cache, engine.
        .target(
            name: "TernCore",
            dependencies: ["CKernels"],
            swiftSettings: [.unsafeFlags(["-Ounchecked"])]
        ),
        .executableTarget(
            name: "tern",
            dependencies: ["TernCore"]
        ),
        .testTarget(
            name: "TernCoreTests",
            dependencies: ["TernCore", "CKernels"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
