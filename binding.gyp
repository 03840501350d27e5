{
  "targets": [
    {
      "target_name": "batchwise",
      "type": "none",
      "actions": [
        {
          "action_name": "cmake_js_build",
          "inputs": [],
          "outputs": ["<(PRODUCT_DIR)/batchwise.node"],
          "action": ["node", "<(module_root_dir)/scripts/build-native.mjs", "--out", "<(PRODUCT_DIR)/batchwise.node"]
        }
      ]
    }
  ]
}
