# The cloud side of mlops on AWS: buckets for DVC data, MLflow artifacts, the prediction log and
# Prefect results; an ECR repository for the flow and model server images; an ECS cluster with the
# roles flow runs need; an MLflow server on ECS with a Postgres backend on RDS; and the Prefect ECS
# work pool, whose base job template is the one `mlops deploy` uses (deployments/work-pools/ecs.json).
#
#   terraform init -backend-config=environments/staging.backend.hcl
#   terraform apply -var-file=environments/staging.tfvars
terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.70"
    }
    prefect = {
      source  = "PrefectHQ/prefect"
      version = "~> 2.13"
    }
  }

  # Remote state: one S3 key per environment, locked with S3's native lock file. The bucket and key
  # come from environments/<env>.backend.hcl.
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      project     = "mlops"
      environment = var.environment
      managed-by  = "terraform"
    }
  }
}

# Prefect Cloud (account and workspace ids) or a self-hosted Prefect server (endpoint only); the
# API key comes from PREFECT_API_KEY in the environment, never from a file.
provider "prefect" {
  endpoint     = var.prefect_api_url
  account_id   = var.prefect_account_id
  workspace_id = var.prefect_workspace_id
}
