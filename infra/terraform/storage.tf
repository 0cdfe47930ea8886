locals {
  name = "mlops-${var.environment}"
  # what each bucket holds; every bucket gets the same protections below
  buckets = {
    dvc            = "DVC remote: versioned datasets"
    mlflow         = "MLflow artifact store: models, reports"
    prediction-log = "prediction log and labels fed back by callers"
    results        = "Prefect results and artifacts of flow runs"
  }
}

data "aws_caller_identity" "current" {}

# One customer-managed key for the buckets, the images, the logs and the database.
resource "aws_kms_key" "mlops" {
  description             = "${local.name}: data, models, images, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministers"
        Effect    = "Allow"
        Principal = { AWS = "arn:aws:iam::${data.aws_caller_identity.current.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsEncrypt"
        Effect    = "Allow"
        Principal = { Service = "logs.${var.region}.amazonaws.com" }
        Action    = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
      },
    ]
  })
}

resource "aws_kms_alias" "mlops" {
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.mlops.key_id
}

# Server access logs of the buckets below: the same protections except logging (it would log
# itself).
resource "aws_s3_bucket" "access_logs" {
  #checkov:skip=CKV_AWS_18:this is the access-log bucket; logging it to itself would loop
  #checkov:skip=CKV_AWS_144:cross-region replication is a disaster-recovery choice left to the operator
  #checkov:skip=CKV2_AWS_62:nothing reacts to new access-log objects
  bucket = "${local.name}-access-logs-${data.aws_caller_identity.current.account_id}"
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.mlops.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

module "bucket" {
  source            = "./modules/bucket"
  for_each          = local.buckets
  name              = "${local.name}-${each.key}-${data.aws_caller_identity.current.account_id}"
  purpose           = each.value
  kms_key_arn       = aws_kms_key.mlops.arn
  access_log_bucket = aws_s3_bucket.access_logs.id
  cold_after_days   = each.key == "prediction-log" ? 30 : null # hourly partitions cool quickly
}
